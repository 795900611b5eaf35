"""lungseg.demo"""
