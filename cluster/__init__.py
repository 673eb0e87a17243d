"""signlock.cluster"""
