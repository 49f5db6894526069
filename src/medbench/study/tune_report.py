"""(issue 22: being built)"""
