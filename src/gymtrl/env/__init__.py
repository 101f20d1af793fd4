"""The embedded environment: a stand-in for a Gym resources server (calculator tasks, verifier, agents)."""
