"""runtime/inference"""
