"""The distributed runtime: engines, workers, the coordinator. Free of torch and matplotlib."""
