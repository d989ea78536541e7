"""Decision rules, one module each, all behind ``policies.base.PolicyBase``; see ``decider.registry``."""
