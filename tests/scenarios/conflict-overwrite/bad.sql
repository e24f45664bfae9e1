UPDATE t SET v = 'bad' WHERE id IN (1, 2);
UPDATE t SET n = 0 WHERE id = 1;
