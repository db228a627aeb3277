"""Everything that is not framework code, written once. Importing it imports no framework."""
