"""One module per pipeline stage, named as in dvc.yaml; each has `run(params) -> metrics` and runs as
`python -m gymtrl.stages.<name>`."""
