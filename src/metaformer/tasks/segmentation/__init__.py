"""Semantic segmentation with Semantic FPN: ADE20K-layout folders, mmseg's recipe and metrics."""
