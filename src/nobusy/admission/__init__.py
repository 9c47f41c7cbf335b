"""Admission: who may send how much, how many requests each upstream takes, who waits.

``adaptive`` finds each upstream's real concurrency (AIMD on overload answers), ``queue``
orders the requests that must wait (priority classes, fair across keys), and ``capacity``
puts them together for the router: take a free slot, overflow, or wait within patience.
"""
