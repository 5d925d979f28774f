"""Raises at import, as a plugin with a missing dependency would."""

raise ImportError("broken_calm_plugin needs the package 'nonexistent-dependency'")
