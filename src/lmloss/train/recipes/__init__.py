"""Recipes shipped with lmloss (``lmloss train main`` runs ``main.toml``)."""
