"""The embedded environment, a stand-in for a Gym resources server: calculator tasks and verifier
(tasks.py), the tool (calculator.py), Gym records (records.py), and two agents that write them: a
scripted reference agent (reference_agent.py) and a model playing the tasks (model_agent.py)."""
