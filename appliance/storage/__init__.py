"""appliance/storage"""
