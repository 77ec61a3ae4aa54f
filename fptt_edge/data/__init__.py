"""Data sets as in-memory sequence tensors: S-MNIST / PS-MNIST, N-MNIST event frames, user .npz."""
