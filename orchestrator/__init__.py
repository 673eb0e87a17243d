"""signlock.orchestrator"""
