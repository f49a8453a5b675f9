"""Register maps of the field devices, one module per family, each citing its vendor document.

Every address here comes from ``/work/shared/register-maps.md``; verify each map against the
installed firmware before relying on it.
"""
