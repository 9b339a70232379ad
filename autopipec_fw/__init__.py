"""autopipec-fw: on-the-fly active learning of ACE potentials with eOn aKMC, orchestrated by FireWorks."""

__version__ = "0.1.0"
