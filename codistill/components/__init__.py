"""What a run is built from: models, data, cohorts and pretrained weights, each made from its own config section."""
