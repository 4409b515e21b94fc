"""Preprocessing pipeline: dataset lists to decoded clips to WebDataset shards."""
