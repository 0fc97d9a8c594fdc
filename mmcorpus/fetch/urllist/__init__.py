"""fetch/urllist"""
