"""The out-of-distribution gate: is an image like the X-rays the model was trained on? (and its probes)"""
