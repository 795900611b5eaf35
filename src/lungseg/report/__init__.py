"""lungseg.report"""
