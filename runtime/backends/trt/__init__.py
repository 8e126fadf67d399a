"""runtime/backends/trt"""
