"""appliance/dicom"""
