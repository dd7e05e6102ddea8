"""jitterline's built-in plugins.

Each module is one plugin, registered in pyproject.toml under the ``jitterline``
entry-point group exactly as a third-party plugin would be, and written against
jitterline's public API only: copy one to start your own.
"""
