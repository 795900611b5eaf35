"""lungseg.lungmask"""
