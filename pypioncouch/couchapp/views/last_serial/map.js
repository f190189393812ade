function (doc) {
  // The highest serial stored: query with descending=true&limit=1.
  if (doc.type === 'project' && typeof doc.last_serial === 'number') {
    emit(doc.last_serial, null);
  }
}
