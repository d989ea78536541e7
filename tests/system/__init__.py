"""System tier: several real processes or real guests working together; marked slow."""
