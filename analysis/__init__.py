"""signlock.analysis"""
