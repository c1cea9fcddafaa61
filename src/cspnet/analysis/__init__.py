"""The paper's claims, measured: :mod:`.ablate` trains a family's baseline and its CSP variants with
one recipe (Table 1: partial ratio x fusion) and reports cost and accuracy side by side; ``grads``
measures the gradient-flow argument (duplicate gradients) behind the design."""
