"""KuaiSAR-format data: the file format, its reader, a generator and dataset preparation."""
