"""runtime/imaging"""
