"""lungseg.inference"""
