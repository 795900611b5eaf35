"""lungseg.ingest"""
