"""High availability (pulse's role): who owns the virtual addresses.  Only this package adds or
removes addresses on interfaces."""
