"""Built-in model presets: plain nn.Modules, built by import path like any user's model (conf/model/*.yaml).

Nothing in here knows about groups, replicas, teachers or process groups.
"""

from codistill.models.char_lstm import CharLSTM
from codistill.models.cnn import CNN
from codistill.models.mlp import MLP

__all__ = ["CNN", "CharLSTM", "MLP"]
