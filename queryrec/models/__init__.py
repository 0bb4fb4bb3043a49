"""The paper's parts as modules: query vector, SAS encoder, DIN and DCN-V2 backbones, QueryRec."""
