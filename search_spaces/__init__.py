"""signlock.search_spaces"""
