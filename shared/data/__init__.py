"""Images and where they come from: the one image validator (:mod:`.images`), the offline
MNIST and Fashion-MNIST datasets (:mod:`.datasets`, read by :mod:`.idx`), a user's own files
(:mod:`.sources`) and the server's trusted images (:mod:`.trusted`)."""
