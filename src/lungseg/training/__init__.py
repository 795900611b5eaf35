"""lungseg.training"""
