"""appliance/worker"""
