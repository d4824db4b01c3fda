"""Device emulation: profiles, fleets, the memory guard, the virtual clock, and capacity answers for strategies."""
