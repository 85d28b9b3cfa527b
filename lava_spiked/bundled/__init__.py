"""The bundled models and data.

``digits_vit``
    The small ViT on scikit-learn's digits, with its trained weights.
``text_data``
    all-MiniLM-L6-v2 with the shipped sentiment head, and the tweets.
``data/``
    Their weights.
"""
