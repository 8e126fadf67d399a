"""runtime/tools"""
