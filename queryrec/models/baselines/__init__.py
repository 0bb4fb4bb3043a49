"""The paper's comparison baselines: PLE, SESRec, IV4REC+ and UniSAR (DIN and DCN, the
backbones QueryRec joins, sit beside QueryRec in `queryrec.models`)."""
