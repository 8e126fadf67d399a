"""runtime/model"""
