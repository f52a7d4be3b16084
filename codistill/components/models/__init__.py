"""Built-in model presets: plain nn.Modules, built by import path like any user's model (conf/model/*.yaml).

Nothing in here knows about groups, replicas, teachers or process groups.
"""

from codistill.components.models.char_lstm import CharLSTM
from codistill.components.models.cnn import CNN
from codistill.components.models.mlp import MLP

__all__ = ["CNN", "CharLSTM", "MLP"]
