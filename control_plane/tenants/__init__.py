"""Tenants: accounts, limits and the token lookups behind authentication."""
