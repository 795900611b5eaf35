"""lungseg.evaluation"""
