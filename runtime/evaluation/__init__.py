"""runtime/evaluation"""
