"""What a user runs beside the pipeline, never a stage: `gymtrl inspect` (a first look at rollouts),
`gymtrl compare` (paired statistics across experiments) and its HTML report."""
