"""appliance/kiosk"""
